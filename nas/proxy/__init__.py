"""The proxy detector and its training: what a trial trains, on what data, and how it is scored."""
