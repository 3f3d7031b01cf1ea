"""Device mesh, logical axis rules and (later) distributed initialisation."""
