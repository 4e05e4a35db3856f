"""The what-if simulator: kumoq's scheduler and egress on virtual time against a model of the
destinations (``kumoq simulate``; docs/testing.md, "What-if simulator").

- ``scenario``: the scenario file (campaigns, destinations, windows): ``load_scenario``;
- ``virtual_loop``: the event loop on a FakeClock, with the network as a seam;
- ``destination``: the simulated network and its SMTP peers;
- ``recorder``: the record sink that counts, and the spool in memory;
- ``engine``: ``simulate``, the daemon's pieces wired to those seams;
- ``report``: the forecast as text and as a page.

The package sits at the top of the layers, under the CLI: it composes what the daemon
composes, and draws its report with the harness's plots (kumoq.testing). Importing it loads
nothing; ``tests/unit/virtual_time.py`` takes the virtual loop alone from here.
"""
