from hadmc_core.cli import main

main()
