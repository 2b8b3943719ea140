"""Feedback from the chat app: judgements (thumbs, compare picks) stored in SQL, turned into preference pairs."""
