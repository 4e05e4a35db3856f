"""kumoq.lua"""
