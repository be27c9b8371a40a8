"""Flink SQL stream analytics (Managed Service for Apache Flink) and its small runner."""
