"""psyjudge: judge chatbot responses for psychological-safety harm."""
