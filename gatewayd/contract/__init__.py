"""The center-link contract: wire shapes, signing, command parsing. Pure codecs."""
