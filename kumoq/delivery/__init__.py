"""kumoq.delivery"""
