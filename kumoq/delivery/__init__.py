"""kumoq.delivery: the delivery protocols (reference §1.9).

- ``kumoq.delivery.maildir``: ``MaildirDeliverer`` writes messages into maildirs from a batching
  worker thread; ``kumoq.delivery.template`` expands the ``maildir_path`` template.

Import the submodules directly: this package re-exports nothing, so importing one protocol does
not pull in another's dependencies (jinja2 for maildir, aiosmtplib for SMTP).
"""
