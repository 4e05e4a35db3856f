"""kumoq.testing"""
