"""The ground floor: the input-error type, progress bars, memory sizes.

Owns nothing of the store or of any stage. Must not import any other lrgi_ooc subpackage.
"""
