"""Custom MiniGrid environments, registered with gymnasium on import."""
