"""Entry point used by ``python workflows/liver_seg_app`` and by the MAP (``holoscan package``)."""

from app import main

if __name__ == "__main__":
    main()
