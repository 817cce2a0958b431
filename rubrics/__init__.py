"""Built-in rubrics. This folder ships inside the wheel as the data package `judge.builtin_rubrics`; it holds
no code. See README.md for the rubric format."""
