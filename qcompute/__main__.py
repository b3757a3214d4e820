from qcompute.cli import main

main()
