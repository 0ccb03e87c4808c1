"""Direct-to-VM browser routing with a control-plane fallback, as a mitmproxy addon."""
