from runwire_cli.main import main

main()
