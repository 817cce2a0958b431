"""The rubric studio: a local web app where clinicians edit, test and version rubrics."""
