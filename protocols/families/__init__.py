"""Protocol families: each has a client role and a server role (see ``base``)."""
