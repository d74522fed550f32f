from __future__ import annotations

from django.db import models


# Django is untyped here (the mypy config's ignore_missing_imports): Model is Any, and --strict
# forbids subclassing Any.
class Author(models.Model):  # type: ignore[misc]
    name = models.CharField(max_length=80)


class Book(models.Model):  # type: ignore[misc]
    title = models.CharField(max_length=120)
    author = models.ForeignKey(Author, related_name="books", on_delete=models.CASCADE)
