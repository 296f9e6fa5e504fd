from pgconverge.cli import main

main()
