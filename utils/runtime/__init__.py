"""Configuration, errors, process set-up, atomic files and name registries: what every other layer uses."""
