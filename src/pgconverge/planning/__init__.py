"""Spec + Catalog → Plan. Pure: no connection is touched here."""
