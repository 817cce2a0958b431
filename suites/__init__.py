"""Built-in benchmark suites. This folder ships inside the wheel as the data package `judge.builtin_suites`; it
holds no code. See README.md for the suite format."""
