from securemesh.cli import main

raise SystemExit(main())
