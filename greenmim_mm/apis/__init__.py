"""What the tools in ``tools/`` run: option parsing (``cli_args``: standard library only, loaded
by file path so that ``--help`` answers without the stack), training/testing (``launch``) and the
reconstruction pictures (``visualization``, ``localmim_visualization``). Nothing is imported here:
each tool imports the module it needs after parsing its arguments."""
