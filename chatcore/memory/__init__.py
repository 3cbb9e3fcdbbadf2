"""Conversation state: the store interface and its in-memory implementation."""
