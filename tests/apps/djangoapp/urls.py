from __future__ import annotations

from apps.djangoapp import views
from django.urls import path

urlpatterns = [
    path("books/", views.books),
    path("books/select-related/", views.books_select_related),
    path("books/prefetch-related/", views.books_prefetch_related),
    path("books/with-counts/", views.books_with_counts),
    path("books/count/", views.book_count),
    path("books/<int:book_id>/", views.book_detail),
    path("books/<int:book_id>/buy/", views.buy),
    path("authors/<int:author_id>/badge/", views.author_badge),
    path("authors/names/", views.author_names),
    path("reports/wait/", views.wait),
    path("reports/summary/", views.summary),
    path("reports/dashboard/", views.dashboard),
    path("reports/dashboard/concurrent/", views.dashboard_concurrent),
]
