"""Names of the credential files a master keeps in its work dir (0600), for scripts."""

# A fresh superuser token, rewritten every hour while the master leads (tokens last 8 h).
ADMIN_TOKEN = "admin-token"
# The bootstrap superuser `admin`'s password, written once when the cluster is created.
ADMIN_PASSWORD = "admin-password"
