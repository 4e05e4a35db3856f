"""kumoq.logs"""
