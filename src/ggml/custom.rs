//! Custom CPU operations (DyCoke's temporal merging runs as one).
