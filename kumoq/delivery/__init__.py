"""kumoq.delivery: the delivery protocols (reference §1.9).

- ``kumoq.delivery.maildir``: ``MaildirDeliverer`` writes messages into maildirs from a batching
  worker thread; ``kumoq.delivery.template`` expands the ``maildir_path`` template.
- ``kumoq.delivery.smtp``: one outbound SMTP session (``SmtpClientSession``), on the connection
  adapter ``kumoq.delivery.client_connection``.

Import the submodules directly: this package re-exports nothing, so importing one protocol does
not pull in another's dependencies (jinja2 for maildir).
"""
