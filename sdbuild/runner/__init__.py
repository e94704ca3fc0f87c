"""The thin runner: generates images from a build using nothing but its manifest and files."""
