"""Release tooling (not shipped): the dependency audit and the release build."""
