"""The only place a CA private key is used: Signers sign approved templates, CRLs and OCSP
answers; nothing here decides what to sign."""
