"""Each SQL text of the store, written once per concern and rendered per dialect
(:mod:`manager.store.sql.dialect`). A concern's module also holds the methods that need
nothing but such statements; the backends add only what truly differs."""
