"""The local rules, pure: readings and time in, decisions out."""
