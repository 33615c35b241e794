"""What the delegate sends home: the shipper, and the on-disk spool that keeps logs and results
through an outage.
"""
