from eyenet.cli import main

raise SystemExit(main())
