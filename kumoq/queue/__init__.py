"""kumoq.queue"""
