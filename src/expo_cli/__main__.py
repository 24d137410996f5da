from expo_cli.cli import main

main()
