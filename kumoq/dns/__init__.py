"""DNS for egress: MX resolution, site-name factoring, the resolver seam and the MX cache.

``site_name`` is pure (L0); ``resolver`` and ``mx_cache`` are L1 (asyncio, dnspython). Nothing
here imports the scheduler, egress, delivery or Lua layers. This package module imports none of
its submodules, so that importing the pure ``site_name`` loads no DNS library.
"""
