"""kumoq.smtp"""
