"""Helpers and reference tables the tests share: certificates, a PostgreSQL server, server processes, a tiny
CNN, the Triton client scenarios, ImageNet reference answers, waiting on server-side evidence."""
