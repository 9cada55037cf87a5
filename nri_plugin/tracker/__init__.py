"""The node tracker: pods, containers and the owners of memory blocks, for both front ends."""
