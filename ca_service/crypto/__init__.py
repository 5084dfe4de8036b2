"""Pure helpers over `cryptography`: CSR parsing, names (IDNA, URI normal form), DER and the
OCSP wire format. No CA key, no SQL, no policy."""
