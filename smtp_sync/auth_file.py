"""The ``--auth-file`` users as a Policy: ``user:password`` lines, each password marked with its
scheme (``{PLAIN}secret`` or a PBKDF2 hash from ``smtpmux hash-password``), every check padded
to the same cost. The public home of ``AuthFilePolicy`` and its helpers, for the command line
(smtp_anyio) and applications alike; the details are in the private module that defines them.
"""

from ._auth_file import AuthFilePolicy, hash_password, load_auth_file, verify_password

__all__ = ("AuthFilePolicy", "hash_password", "load_auth_file", "verify_password")

AuthFilePolicy.__module__ = __name__  # tracebacks name the module a user imports it from
