"""kumoq.spool"""
