from .exchange import main

main()
