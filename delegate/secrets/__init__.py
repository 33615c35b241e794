"""Secret managers the delegate talks to with its own credentials.

Two families, as in the design: *envelope* providers wrap and unwrap data keys with a key
the customer holds (AWS KMS, Google Cloud KMS, Vault Transit); *reference* providers fetch
a value kept in the customer's store (Vault KV v2, AWS Secrets Manager, Azure Key Vault, a
custom script). The manager never talks to any of them.
"""
