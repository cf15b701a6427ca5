"""The lowest layer: errors as sentences, run states, the strict-config converter and file guards."""
