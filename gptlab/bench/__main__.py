"""`python -m gptlab.bench`."""

from gptlab.bench import main

main()
