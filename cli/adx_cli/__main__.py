from adx_cli.app import main

main()
